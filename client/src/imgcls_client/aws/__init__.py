"""`imgcls aws`: the SageMaker lifecycle with boto3 (never in the image).

  cli        parsers (no boto3 import) and run_aws
  commands   what each command does
  training   CreateTrainingJob / CreateHyperParameterTuningJob requests from flags and a spec
  hosting    model, endpoint config, endpoint and autoscaling requests
  validate   checks against the service model and SageMaker's run-time rules, before sending
  context    region, role and bucket
  results    a tuning job's results in the local study's format
"""
