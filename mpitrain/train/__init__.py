"""Training: optimizer and schedule, the step loop over the parallel engines, evaluation."""
