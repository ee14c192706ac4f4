"""hf-ffsleep: a causal LM that learns layer by layer (Forward-Forward), remembers feedback in Hopfield banks, and
consolidates them into its weights while it sleeps.

Importing the package registers `FFSleepConfig` / `FFSleepModel` / `FFSleepForCausalLM` with the `Auto*` classes, and
marks them for `trust_remote_code` export, so `save_pretrained` writes the code files and `auto_map`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_ffsleep import FFSleepConfig
from .hopfield import BANKS_FILE, BankFileError, HopfieldBank
from .modeling_ffsleep import FFSleepForCausalLM, FFSleepModel, FFSleepPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(FFSleepConfig.model_type, FFSleepConfig, exist_ok=True)
AutoModel.register(FFSleepConfig, FFSleepModel, exist_ok=True)
AutoModelForCausalLM.register(FFSleepConfig, FFSleepForCausalLM, exist_ok=True)
FFSleepConfig.register_for_auto_class()
FFSleepModel.register_for_auto_class("AutoModel")
FFSleepForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "BANKS_FILE",
    "BankFileError",
    "FFSleepConfig",
    "FFSleepForCausalLM",
    "FFSleepModel",
    "FFSleepPreTrainedModel",
    "FFTrainer",
    "FFTrainingArguments",
    "HopfieldBank",
]


def __getattr__(name):
    # The trainer pulls in accelerate and the Trainer machinery: load it only when asked for.
    if name in ("FFTrainer", "FFTrainingArguments"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hf_ffsleep' has no attribute {name!r}")
