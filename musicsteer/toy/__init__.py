"""The toy MusicGen: a small MusicGen trained by this project on music it renders itself (issue 24).

corpus: the labelled clips (four genres, captions) rendered with FluidSynth and pedalboard; the training stages
(codec, text encoder + decoder, judge) build on it. Only building the corpus needs the renderers (the `toy` extra);
running the shipped model needs nothing beyond musicsteer's own dependencies.
Corpus modules: music (clip spec, notes, theory), genres (electronic, jazz, rock arrangements), classical (music21
score excerpts), render (FluidSynth -> pedalboard -> 10 s clip), corpus (plan, split, captions, writing); docs/toy.md.
Training modules: training (the one loop), codec, quantizer, losses, decoder, and plan (`toy train`: PLAN, the
one table of the stages' steps and budget shares, and running them in order in one run folder), judge (the
small CLAP that scores genres), vectors (the probe pipeline on held-out clips: the toy's steering vectors).
Shipping: ship (`toy ship RUN`: a finished run into the package, float16, <= 30 MB), shipped (where the shipped
toy lives: `--model toy`, `--clap toy`, `--vectors toy`).
"""
