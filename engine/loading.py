"""Load a MusicGen model and its processor: from the hub, a local folder, the tiny test model, the toy
(a small MusicGen trained by this project, shipped in the package: musicsteer/toy/shipped.py), or a
random-weight model of a real size (for speed benchmarks on machines without the hub).

Every name ends up in the same `from_pretrained` path except `random:SIZE`, which has no weights
to load. Every failure a user can cause becomes a one-line `MusicsteerError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
)

from . import tiny
from .errors import MusicsteerError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
# decoder (hidden, layers, heads, ffn) of facebook/musicgen-{small,medium,large}
_RANDOM_SIZES = {"small": (1024, 24, 16, 4096), "medium": (1536, 48, 24, 6144), "large": (2048, 48, 32, 8192)}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# Architecture fields only: dtype, attention backend or transformers version must not change the
# fingerprint, or vectors made in fp32 would be refused in bf16.
_FINGERPRINT_KEYS = (
    "vocab_size", "max_position_embeddings", "num_hidden_layers", "ffn_dim", "num_attention_heads",
    "hidden_size", "num_codebooks", "audio_channels", "activation_function", "scale_embedding",
)


@dataclass(frozen=True)
class ModelFacts:
    """What a plan needs to know of a loaded model, without its weights: the attributes of the same
    names on `LoadedModel` (`LoadedModel.facts`). A Ray driver gets these from its actors
    (musicsteer/cluster.py) instead of loading the model itself; `weights_digest` lets it check that
    every actor loaded the same weights, which the architecture `fingerprint` cannot tell."""

    name: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    num_layers: int
    d_model: int
    sample_rate: int  # Hz
    frame_rate: int  # frames/s
    audio_channels: int
    weights_digest: str


@dataclass
class LoadedModel:
    """A MusicGen model ready for inference (eval, on `device`, in `dtype`) and its processor."""

    model: MusicgenForConditionalGeneration
    processor: MusicgenProcessor  # always set: load_model refuses a model without one
    name: str  # what the user passed: "tiny", "toy", a hub id, a path, "random:small"
    device: torch.device
    dtype: torch.dtype
    weights_id: str = ""  # identifies weights beyond name + config (the tiny recipe version, the toy's digest)

    @property
    def num_codebooks(self) -> int:
        return int(self.model.config.decoder.num_codebooks)

    @property
    def audio_channels(self) -> int:
        return int(getattr(self.model.config.decoder, "audio_channels", 1) or 1)

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> int:
        return int(self.model.config.audio_encoder.frame_rate)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.decoder.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.decoder.hidden_size)

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.decoder.vocab_size)

    @property
    def pad_token_id(self) -> int:
        gen = self.model.generation_config
        for value in (gen.pad_token_id, gen.decoder_start_token_id, self.model.config.decoder.pad_token_id):
            if value is not None:
                return int(value)
        return self.codebook_size  # MusicGen's convention: one past the last code

    @property
    def max_positions(self) -> int:
        return int(self.model.config.decoder.max_position_embeddings)

    @property
    def fingerprint(self) -> str:
        """Short stable id, e.g. "tiny:3f9a0c1d2e4b": a name plus a hash of the decoder architecture.
        Local folders are named by their last path component, so moving a folder keeps its id."""
        decoder = self.model.config.decoder.to_dict()
        arch = {key: decoder.get(key) for key in _FINGERPRINT_KEYS}
        arch["weights_id"] = self.weights_id
        digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]
        label = self.name
        if not label.startswith("random:") and label not in tiny.VARIANTS and Path(label).expanduser().is_dir():
            label = Path(label).expanduser().resolve().name
        return f"{label}:{digest}"


    @property
    def facts(self) -> ModelFacts:
        return ModelFacts(self.name, self.fingerprint, self.device, self.dtype, self.num_layers, self.d_model,
                          self.sample_rate, self.frame_rate, self.audio_channels, weights_digest(self.model))


def weights_digest(model: torch.nn.Module, sample: int = 64) -> str:
    """A hash of every parameter's name, shape, dtype and first `sample` values (their bytes): two copies
    of a model that differ anywhere a load can go wrong (another checkpoint, a re-initialised layer)
    differ here, at the cost of reading ~64 numbers per tensor instead of all the weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        # The checkpoint's weights only: not the engine's own modules cached on the model (the fast decoder,
        # its int8 copy), which exist or not depending on what ran first; they derive from these weights.
        if "_musicsteer_" in name or not isinstance(tensor, torch.Tensor):
            continue
        if tensor.is_quantized:
            tensor = tensor.int_repr()
        head = tensor.detach().reshape(-1)[:sample].cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(head.view(torch.uint8).numpy().tobytes() if head.numel() else b"")
    return digest.hexdigest()[:16]


def files_digest(folder: Path, pattern: str) -> str:
    """sha256 (16 hex digits) of the names and bytes of `folder`'s files matching `pattern`, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob(pattern)):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def device_spec(device: str) -> str:
    """--device's text, checked and normalised ("auto", "cpu", "cuda", "cuda:N" or "mps"; "mps:0", torch's name
    of the one Apple GPU, is "mps") without asking what this machine has: a Ray driver checks it for actors on
    other machines."""
    spec = str(device).strip().lower()
    if spec == "mps:0":
        return "mps"
    if spec not in ("auto", "cpu", "mps") and re.fullmatch(r"cuda(:\d+)?", spec) is None:
        raise MusicsteerError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N, mps or mps:0")
    return spec


def resolve_device(device: str) -> torch.device:
    """"auto" (CUDA when available), "cpu", "cuda", "cuda:N" or "mps" (an Apple GPU: the eager step, as
    `--decode auto` picks there; tests/test_fake_device.py checks it keeps every tensor on the device)."""
    spec = device_spec(device)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise MusicsteerError(f"device {device!r} requested but MPS (an Apple GPU, macOS 12.3+) is not available "
                                  f"(torch {torch.__version__}); use --device cpu")
        return torch.device("mps", 0)  # explicit index, so it compares equal to tensor.device
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not torch.cuda.is_available():
        raise MusicsteerError(
            f"device {device!r} requested but CUDA is not available (torch {torch.__version__}); use --device cpu"
        )
    index = int(match.group(1)) if match.group(1) else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise MusicsteerError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    return torch.device("cuda", index)  # explicit index, so it compares equal to tensor.device


def resolve_dtype(dtype: str) -> torch.dtype:
    """"float32"|"bfloat16"|"float16" (or "fp32"|"bf16"|"fp16")."""
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise MusicsteerError(f"unknown dtype {dtype!r}; expected float32, bfloat16 or float16")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the name `resolve_dtype` reads, as logs, manifests and reports write it."""
    return str(dtype).removeprefix("torch.")


def load_model(name_or_path: str, device: str = "auto", dtype: str = "float32") -> LoadedModel:
    """Load "tiny" | "tiny-stereo" | "toy" | "random:SIZE[-stereo]" | a local folder | a hub id. "toy" is the
    shipped toy MusicGen (one line, MusicsteerError, while none is shipped); its fingerprint names its weights."""
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    name = str(name_or_path).strip()
    weights_id = ""
    if name in tiny.VARIANTS:
        folder = tiny.ensure_tiny(name)
        weights_id = f"tiny-recipe-{tiny.RECIPE_VERSION}"
        with tiny.no_progress_bars():
            model, processor = _from_pretrained(name, str(folder), torch_dtype, local_only=True)
    elif name == "toy":
        from musicsteer.toy.shipped import shipped

        folder = shipped("model")
        # retrained weights keep the architecture: the digest tells logs, caches and vectors which weights they had
        weights_id = f"toy-{files_digest(folder, '*.safetensors')}"
        model, processor = _from_pretrained(name, str(folder), torch_dtype, local_only=True)
    elif name.startswith("random:"):
        model, processor = build_random_model(name.removeprefix("random:"))
    else:
        source, local_only = _locate(name)
        model, processor = _from_pretrained(name, source, torch_dtype, local_only)
    model = model.to(device=torch_device, dtype=torch_dtype).eval()
    return LoadedModel(model, processor, name, torch_device, torch_dtype, weights_id)


def build_random_model(size: str) -> tuple[MusicgenForConditionalGeneration, MusicgenProcessor]:
    """A random-weight MusicGen with the real architecture of `size` ("small", "medium-stereo", …).

    Built in the default dtype on CPU with transformers' own init (random:small: ~10 s on 2 CPU
    cores); the weights are seeded, so the same size always gives the same model.
    """
    base, _, variant = size.partition("-")
    if base not in _RANDOM_SIZES or variant not in ("", "stereo"):
        raise MusicsteerError(
            f"unknown random model size {size!r}; expected small, medium or large (optionally -stereo)"
        )
    hidden, layers, heads, ffn = _RANDOM_SIZES[base]
    stereo = variant == "stereo"
    text = T5Config(  # t5-base, the text encoder of every MusicGen size
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        feed_forward_proj="relu", is_encoder_decoder=False,
    )
    audio = EncodecConfig(  # facebook/encodec_32khz as used inside MusicGen
        sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], codebook_size=2048,
        num_filters=64, hidden_size=128, num_lstm_layers=2, codebook_dim=128, use_causal_conv=False,
        normalize=False, audio_channels=1, norm_type="weight_norm", pad_mode="reflect", kernel_size=7,
        last_kernel_size=7, residual_kernel_size=3, num_residual_layers=1, compress=2,
        use_conv_shortcut=False, trim_right_ratio=1.0, chunk_length_s=None, overlap=None,
    )
    torch.manual_seed(0)
    decoder = MusicgenDecoderConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
        vocab_size=2048, num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1,
        max_position_embeddings=2048, activation_function="gelu", pad_token_id=tiny.PAD_TOKEN_ID,
        bos_token_id=tiny.PAD_TOKEN_ID, decoder_start_token_id=tiny.PAD_TOKEN_ID,
    )
    config = MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    model = MusicgenForConditionalGeneration(config)
    tiny.musicgen_generation_defaults(model)
    return model, tiny.build_processor()  # random models need only some tokenizer


# ---------------------------------------------------------------- from_pretrained


def _from_pretrained(
    name: str, source: str, dtype: torch.dtype, local_only: bool
) -> tuple[MusicgenForConditionalGeneration, MusicgenProcessor]:
    where = "from the hub" if source == name and not Path(source).expanduser().exists() else f"from {source}"
    # config and processor first: they are small, so a wrong model fails before the weights load
    try:
        model_type = AutoConfig.from_pretrained(source, local_files_only=local_only).model_type
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MusicsteerError(f"could not load model {name!r} {where}: {_first_line(e)}") from e
    if model_type != "musicgen":
        raise MusicsteerError(f"model {name!r} is a {model_type!r} model, not MusicGen (model_type 'musicgen')")
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError, TypeError):
        processor = None  # transformers' own message here is several sentences about the hub
    if not isinstance(processor, MusicgenProcessor):
        found = f" (found a {type(processor).__name__})" if processor is not None else ""
        raise MusicsteerError(
            f"model {name!r} has no MusicGen processor (tokenizer + feature extractor) {where}{found}; "
            "save one next to the model with processor.save_pretrained(folder)"
        )
    try:
        # transformers 5 spells the dtype argument `dtype` (`torch_dtype` is deprecated)
        model = MusicgenForConditionalGeneration.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise MusicsteerError(f"could not load model {name!r} {where}: {_first_line(e)}") from e
    return model, processor


def _locate(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only) for a folder or a hub id."""
    path = Path(name).expanduser()
    if path.exists():
        check_model_folder(name, path)
        return str(path), True
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1
    if looks_like_path:
        raise MusicsteerError(f"model folder not found: {name}")
    if not _HUB_ID.fullmatch(name):
        raise MusicsteerError(
            f"{name!r} is not a model folder, a hub id (like facebook/musicgen-small), tiny, toy or random:SIZE"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline and _hub_reachable():
        return name, False
    # Offline: only a copy already in the hub cache can load. Checking here also avoids
    # huggingface_hub's retries (five, ~25 s of back-off) when the network is simply absent.
    if not _in_hub_cache(name):
        raise MusicsteerError(
            f"could not load model {name!r} from the hub (no network?); offline machines need a local "
            "folder made with save_pretrained, or --model tiny"
        )
    return name, True


def check_model_folder(name: str, path: Path, model_type: str = "musicgen", kind: str = "MusicGen") -> None:
    """Refuse, in one line, a folder that is not a save_pretrained folder of `model_type`."""
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        raise MusicsteerError(f"{name} is not a {kind} model folder (no config.json; make one with save_pretrained)")
    try:
        found = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise MusicsteerError(f"{name}: unreadable config.json ({_first_line(e)})") from e
    if found != model_type:
        raise MusicsteerError(f"{name} holds a {found!r} model, not {kind} (model_type {model_type!r})")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy in use) opens within `timeout`.
    Run in a daemon thread because a DNS lookup has no timeout of its own."""
    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(endpoint.hostname or ""):
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    else:
        target = endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((target.hostname, port), timeout=timeout).close()
            ok.append(True)
        except (OSError, UnicodeError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(ok)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
