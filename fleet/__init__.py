"""The composition root: the `fleet` command line and the demo, which wire every layer together."""
