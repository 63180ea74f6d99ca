"""Training stage: data sets and loading, parameter freezing, ORT training artifacts, the loop, evaluation."""
