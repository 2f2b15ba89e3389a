"""The search: a YAML space, Ray Tune + Optuna (TPE) + ASHA around the one training loop."""
