"""Local trainers: gradient functions and the local-training loop clients run."""
