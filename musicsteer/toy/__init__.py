"""The toy MusicGen: a small MusicGen trained by this project on music it renders itself (issue 24).

corpus: the labelled clips (four genres, captions) rendered with FluidSynth and pedalboard; the training stages
(codec, text encoder + decoder, judge) build on it. Only building the corpus needs the renderers (the `toy` extra);
running the shipped model needs nothing beyond musicsteer's own dependencies.
"""
