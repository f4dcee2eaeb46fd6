"""Image classification by transfer learning, packaged for SageMaker."""
