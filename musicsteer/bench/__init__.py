"""musicsteer.bench: measuring the engine (`musicsteer bench`) — speed against transformers' generate,
knob latency, recaptures, logit drift of the speed options, and the live soak. Not part of the engine
(model -> audio): it drives the engine from outside, as a user's program would."""
