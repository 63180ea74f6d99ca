"""Training stage: options, the run folder, freeze policies, ORT training artifacts, the loop, the activation cache."""
