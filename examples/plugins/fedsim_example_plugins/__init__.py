"""fedsim plugins written outside fedsim: a client trainer, a model and a dataset (see README.md)."""
