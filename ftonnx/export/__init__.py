"""Export stage: the inference model of a run (`inference`) and its edge variants (int8, fp16, ORT
format, on-device training artifacts), with a report of what each costs and deviates."""
