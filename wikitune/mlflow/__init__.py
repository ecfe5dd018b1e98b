"""wikitune's only code that speaks to MLflow: tracking of training runs and the registry.

Modules here import the real ``mlflow`` library with absolute imports.
"""
