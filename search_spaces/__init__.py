"""The search spaces that ship with raytower: `--space quick` and `--space default` name them."""
