"""Built-in server strategies, one per file, registered under the `fedsim.strategies` entry points."""
