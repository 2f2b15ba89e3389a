"""Ray's MLflowLoggerCallback, with raytower's metric names as MLflow accepts them.

MLflow refuses '@' in a metric name ("val/recall@100": the search stopped with an MlflowException
in the driver), so each result's keys are logged with '@' spelled '_at_' ("val/recall_at_100").
Imported only when --logger mlflow is asked for; a module-level class, so Tune can pickle it.
"""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback


def mlflow_name(key: str) -> str:
    return key.replace("@", "_at_")


class RaytowerMLflowCallback(MLflowLoggerCallback):
    def log_trial_result(self, iteration: int, trial, result: dict):
        super().log_trial_result(iteration, trial, {mlflow_name(k): v for k, v in result.items()})
