"""imgcls client: local hyperparameter studies (`imgcls tune`) and the SageMaker lifecycle (`imgcls aws`).

Runs on the user's machine, never in the image. Modules:
  spec     the search-space file (one spec for local studies and SageMaker tuning jobs)
  study    local Optuna studies whose trials are real `imgcls train` runs
  results  results tables and plots, shared by local studies and SageMaker tuning jobs
"""
