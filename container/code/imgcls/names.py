"""Names that start-up code needs without importing torch or numpy (the `imgcls serve` supervisor, CLI parsing).

models.py checks that BACKBONE_NAMES matches its builders; artifacts.py owns what the files hold.
"""
WEIGHTS_FILE = "model.pt"
LABELS_FILE = "labels.json"
CONFIG_FILE = "model_config.json"

# Input channels that hold no images (the job config check counts the others as data channels).
EXTRA_CHANNELS = ("pretrained",)

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "efficientnet_b0", "convnext_tiny")


def is_rule_param(name: str) -> bool:
    """`StepOutlier_stddev`-style insight rule parameters start with a capital; hyperparameters never do."""
    return bool(name) and name[0].isupper() and "_" in name
