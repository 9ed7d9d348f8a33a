"""The unlearning loop and the update rule every training loop shares."""
