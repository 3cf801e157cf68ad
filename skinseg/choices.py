"""Every list of valid choices, defined once: the config validates against these, the command line offers them,
and the code that dispatches on them is tested to cover exactly them. Kept free of heavy imports."""

MODELS = ("unet", "unet-residual", "unet-attention", "unet-timm-attention")
# former model names, still accepted (a config or a checkpoint that names one gets the model it names now)
MODEL_ALIASES = {"unet-convnext-attention": "unet-timm-attention"}
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adabelief", "adagrad")
SCHEDULERS = ("none", "reduce_lr", "cosine", "cosine_restart", "step", "exp", "onecycle", "poly")
SAMPLERS = ("shuffle", "rare")
PRESENCE_POOLS = ("avg", "avgmax")
INITS = ("xavier", "kaiming", "orthogonal", "normal", "none")
RESIZE_MODES = ("stretch", "pad")
LOSSES = ("bce", "dice", "jaccard", "log_jaccard", "micro_jaccard", "focal", "tversky")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
TTA_MODES = ("none", "hflip", "hvflip")
SPLIT_NAMES = ("train", "val", "test", "dev")
AUGMENT_ON = ("cpu", "gpu")
# decision thresholds: tuned for the overall micro Jaccard (the leaderboard's), or each attribute for its own Jaccard
OPERATING_POINTS = ("micro", "per_attribute")
CHECKPOINT_RULES = ("best", "last")
