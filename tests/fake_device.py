"""Run the engine on a fake `cuda` or `mps` device on a CPU-only machine, and watch every op it runs.

torch's `FakeTensorMode` gives tensors with a device, a shape and a dtype but no data: every op runs
its shape and device rules (an op that mixes devices raises `FakeTensorDeviceMismatchError`, `.item()`
raises `DataDependentOutputException`, an op whose output shape depends on values raises) and nothing
is computed. `Watch`, a dispatch mode under it, sees each op with its inputs and outputs and records
what a GPU step must never do: make a CPU tensor, copy from the host to the device (a per-token upload), read
a device value back to the host, or (in the steering table's update) copy to the device blocking.

What is mocked, because it cannot exist on a CPU-only build of torch (and only that):
  - the device guards of CUDA and MPS: torch's Python bindings of indexing, `copy_` and `to` open a
    device guard, which a CPU build does not link (torch's own `_ensureCUDADeviceGuardSet` no longer
    installs one there). `device_guards` registers a no-op guard reporting the device's type, through
    torch's own Python-backend guard, into the registry slot of CUDA and of MPS, and empties them after;
  - a CUDA/MPS `torch.Generator`: `StandInGenerator`, a CPU generator that remembers the device it was
    asked for, so the watch can check each draw uses a generator of the tensor's device;
  - `exponential_` with a generator, which fake mode refuses: the watch answers it (after that check);
  - `torch.cuda.Event` and `torch.cuda.current_stream` (the CUDA runtime): `NoEvent`, which does nothing;
  - on MPS, scaled_dot_product_attention's choice of kernel, which a non-Apple build cannot make (an internal
    assert): `MpsAttention` sends it to torch's math attention, the kernel MPS itself falls back to.
Nothing else is replaced; the model is the real transformers MusicGen at the real shapes, with fake weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from musicsteer.engine.loading import LoadedModel, build_random_model

# c10::DeviceType values (c10/core/DeviceType.h; part of torch's ABI): the registry's slot of each.
DEVICE_SLOTS = {"cuda": 1, "mps": 13}
PRIVATE_USE_1 = 20
_REGISTRY = "_ZN3c104impl26device_guard_impl_registryE"  # c10::impl::device_guard_impl_registry


@contextlib.contextmanager
def device_guards(*devices: str) -> Iterator[None]:
    """Register a no-op device guard for each device type in `devices` (e.g. "cuda", "mps") while inside."""
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so"))
    try:
        registry = ctypes.c_void_p.in_dll(lib, _REGISTRY)
    except ValueError as exc:  # another torch build: say so rather than test nothing
        raise RuntimeError(f"this torch's libc10 has no {_REGISTRY}: the fake-device tests need it") from exc
    slots = (ctypes.c_void_p * (PRIVATE_USE_1 + 1)).from_address(ctypes.addressof(registry))
    kinds = torch._C._autograd.DeviceType
    kept, before = [], {DEVICE_SLOTS[d]: slots[DEVICE_SLOTS[d]] for d in devices}
    for device in devices:
        kind = getattr(kinds, device.upper())

        class Guard(torch._C._acc.DeviceGuard):
            def type_(self, kind=kind):  # noqa: ANN001, ANN202 - torch's interface
                return kind

        guard = Guard()
        kept.append(guard)  # the C++ guard calls back into this object: keep it alive
        private = slots[PRIVATE_USE_1]
        torch._C._acc.register_python_privateuseone_device_guard(guard)  # fills the PrivateUse1 slot
        slots[DEVICE_SLOTS[device]], slots[PRIVATE_USE_1] = slots[PRIVATE_USE_1], private
    try:
        yield
    finally:
        for slot, pointer in before.items():
            slots[slot] = pointer


class MpsAttention(TorchFunctionMode):
    """F.scaled_dot_product_attention on an MPS tensor as torch's math attention (the kernel choice is
    compiled only into Apple builds); everything else unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's interface
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and args[0].device.type == "mps":
            q, k, v = args[:3]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            return torch.ops.aten._scaled_dot_product_attention_math(q, k, v, mask, 0.0, False, None,
                                                                     scale=kwargs.get("scale"))[0]
        return func(*args, **kwargs)


class StandInGenerator(torch.Generator):
    """A CPU torch.Generator standing in for a CUDA/MPS one; `claimed` is the device it was made for."""

    def __new__(cls, device: str | torch.device | None = None) -> StandInGenerator:
        return super().__new__(cls)

    def __init__(self, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.claimed = torch.device("cpu" if device is None else device)


class NoEvent:
    """torch.cuda.Event without a CUDA runtime: recording and waiting do nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def record(self, stream: object = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


@dataclass
class Violation:
    rule: str
    what: str
    where: list[str]  # the engine's frames, innermost last

    def __str__(self) -> str:
        return f"[{self.rule}] {self.what} at {' <- '.join(reversed(self.where))}"


def _engine_frames() -> list[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [f"{os.path.relpath(f.filename, root)}:{f.lineno}" for f in traceback.extract_stack()
            if f.filename.startswith(root) and "/tests/" not in f.filename][-4:]


def _is_cpu(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "cpu"


def _on_device(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "cpu"


def _blocking_upload(args: tuple, kwargs: dict) -> bool:
    """copy_(dst, src, non_blocking) from the host into a CUDA tensor, blocking (on MPS every upload blocks)."""
    non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    return _on_device(args[0]) and _is_cpu(args[1]) and args[0].device.type == "cuda" and not non_blocking


class Watch(TorchDispatchMode):
    """Records what the code inside a `region` does that a GPU step must not.

    Rules: "device" (a decode step, a prefill, the sampler, a decoder chunk): no op may take or make a
    CPU tensor, none may read a value to the host. "step" (a whole token step, around the parts marked
    otherwise): no op may make a CPU tensor, copy from the host to the device (`_to_copy`, `copy_`: a
    per-token upload) or read a device value back. "update" (the steering table's update, which edits a
    host mirror by design): nothing is read back from the device, and every copy to it is non-blocking.
    "transfer" (the one designed copy of a frame or a chunk to the host): not checked. Outside any region
    nothing is checked. A host read also raises (fake mode cannot answer it), so the caller fails either way.
    """

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[Violation] = []
        self.rules: list[str] = []
        self.draws = 0

    @contextlib.contextmanager
    def region(self, rule: str) -> Iterator[None]:
        self.rules.append(rule)
        try:
            yield
        finally:
            self.rules.pop()

    def _flag(self, what: str) -> None:
        self.violations.append(Violation(self.rules[-1], what, _engine_frames()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's interface
        kwargs = kwargs or {}
        rule = self.rules[-1] if self.rules else None
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten.exponential_.default:  # fake mode refuses a generator: answered here
            self.draws += 1  # (the generator's device is checked by `check_draws`, where it is still a Python object)
            return args[0]
        if (rule is not None and rule != "transfer" and func is torch.ops.aten._local_scalar_dense.default
                and (rule in ("device", "step") or any(_on_device(t) for t in inputs))):  # host math reads host values
            self._flag(f"{func} (a value read back to the host)")
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if rule == "device":
            for t in inputs:
                if _is_cpu(t):
                    self._flag(f"{func} takes a CPU tensor {tuple(t.shape)}")
                    break
            for t in outputs:
                if _is_cpu(t):
                    self._flag(f"{func} makes a CPU tensor {tuple(t.shape)}")
                    break
        elif rule == "step":
            made = next((t for t in outputs if _is_cpu(t)), None)
            if made is not None:
                self._flag(f"{func} makes a CPU tensor {tuple(made.shape)}")
            elif any(_on_device(t) for t in outputs) and any(_is_cpu(t) for t in inputs):
                self._flag(f"{func} copies from the host to the device")
        elif rule == "update":
            if any(_on_device(t) for t in inputs) and any(_is_cpu(t) for t in outputs):
                self._flag(f"{func} copies from the device to the host")
            if func is torch.ops.aten.copy_.default and _blocking_upload(args, kwargs):
                self._flag(f"{func}: a blocking copy into the device table")
        return out


def check_draws(watch: Watch, draw: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`sampling.draw`, checking first that every generator it draws from was made for the probabilities'
    device (a CPU generator with CUDA tensors fails there; here every generator is a stand-in)."""

    def checked(probs: torch.Tensor, ids: torch.Tensor, generator: object) -> torch.Tensor:
        for one in generator if isinstance(generator, list | tuple) else [generator]:
            claimed = getattr(one, "claimed", None)
            if claimed is not None and claimed.type != probs.device.type:
                watch._flag(f"a draw on {probs.device} from a generator made for {claimed}")
        return draw(probs, ids, generator)

    return checked


def fake_model(mode: FakeTensorMode, size: str, device: str, dtype: torch.dtype) -> LoadedModel:
    """`random:SIZE` (the real architecture) with fake weights on the fake `device`, in `dtype`: what
    load_model gives on that device, without a byte of weights (a fake tensor holds no data)."""
    with mode:
        model, processor = build_random_model(size)
        # model.to() would swap each parameter for a subclass tensor, which fake tensors with weak
        # references refuse: move each parameter and buffer as load_model's .to() would.
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    moved = p.detach().to(device, dtype if p.is_floating_point() else p.dtype)
                    module._parameters[name] = torch.nn.Parameter(moved, requires_grad=False)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = b.to(device, dtype if b.is_floating_point() else b.dtype)
    return LoadedModel(model.eval(), processor, f"random:{size}", torch.device(device, 0), dtype)
