"""Training: `fit`, the epoch loop, resume state, optimiser knobs and data-parallel setup."""
