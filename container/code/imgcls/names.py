"""Names that start-up code needs without importing torch (the `imgcls serve` supervisor, CLI parsing).

models.py checks that BACKBONE_NAMES matches its builders; artifacts.py owns what the files hold.
"""
WEIGHTS_FILE = "model.pt"
LABELS_FILE = "labels.json"
CONFIG_FILE = "model_config.json"

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "efficientnet_b0", "convnext_tiny")
