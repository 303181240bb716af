"""`QuantLinear`: a Linear layer that keeps its weight as integer codes + scales (+ zero points).

The reference matmul dequantizes the weight and calls `F.linear`: weight-only quantization saves
memory and file size (int4: ~0.6 byte per weight against 4), and the arithmetic stays float. For
float32 decoding steps on CPU (a few rows), torch's kernels that read the codes directly are used
instead (`torch._weight_int8pack_mm`, `torch._weight_int4pack_mm_for_cpu`); the tests hold them
equal to the reference and `benchmarks/bench_quant.py` measures both paths.

The buffers are the saved format: `qweight`, `scales`, `zeros` (int4 only), `bias` (if any), under
the Linear's own name (`model.layers.0.self_attn.q_proj.qweight`), so loading stays strict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minillama.quant import rtn

# Linear layers of the decoder quantized by default: every matmul of every block.
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# torch's int8 / int4 CPU kernels can only win for a few rows: for a prompt or a training batch of 512
# rows they were 30-70x slower than dequantize + F.linear on the 2-core host of docs/quantization.md,
# so only decoding-sized inputs use them. There, end to end (benchmarks/bench_quant.py at 05:00 UTC,
# the least loaded runs), they decoded faster than dequantizing: int8 1.16x / 1.13x, int4 1.17x /
# 1.09x (demo model / stories15M shape). A more loaded run had int8 at 0.96x: close either way.
KERNEL_MAX_ROWS = 4


class QuantLinear(nn.Module):
    """y = x W^T + b with W (out_features, in_features) stored as `bits`-bit codes.

    bits 8: qweight (N, K) int8, scales (N,) float32.
    bits 4: qweight (N, K/2) uint8 (two codes per byte), scales (N, K/g) float16, zeros (N, K/g) uint8.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None = None,
                 bias: bool = False, device: torch.device | str | None = None):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = group_size if bits == 4 else None
        N, K = out_features, in_features
        if bits == 8:
            self.register_buffer("qweight", torch.empty(N, K, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.empty(N, dtype=torch.float32, device=device))
        else:
            groups = K // group_size
            self.register_buffer("qweight", torch.empty(N, K // 2, dtype=torch.uint8, device=device))
            self.register_buffer("scales", torch.empty(N, groups, dtype=rtn.SCALE_DTYPE, device=device))
            self.register_buffer("zeros", torch.empty(N, groups, dtype=torch.uint8, device=device))
        self.bias = nn.Parameter(torch.empty(N, device=device), requires_grad=False) if bias else None
        self.use_kernel = True  # torch's CPU kernels for decoding-sized inputs (see KERNEL_MAX_ROWS)
        self._int4_kernel: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_codes(cls, codes: rtn.Int8Weight | rtn.Int4Weight, bias: torch.Tensor | None,
                   group_size: int | None = None) -> QuantLinear:
        """A layer holding already quantized codes (`rtn.quantize_int8/4`, GPTQ)."""
        bits = 8 if isinstance(codes, rtn.Int8Weight) else 4
        N = codes.qweight.shape[0]
        K = codes.qweight.shape[1] * (1 if bits == 8 else 2)
        layer = cls(K, N, bits, group_size, bias is not None, device="meta")
        for name, tensor in codes._asdict().items():
            setattr(layer, name, tensor.contiguous())
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None = None) -> QuantLinear:
        """Round-to-nearest quantization of a float Linear."""
        codes = rtn.quantize_int8(linear.weight) if bits == 8 else rtn.quantize_int4(linear.weight, group_size)
        return cls.from_codes(codes, linear.bias, group_size)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(out_features, in_features) float: the weight this layer computes with."""
        if self.bits == 8:
            return rtn.dequantize_int8(self.qweight, self.scales, dtype)
        return rtn.dequantize_int4(self.qweight, self.scales, self.zeros, dtype)

    def _apply(self, fn, recurse=True):
        # model.to(dtype) casts floating buffers; the scales are part of the codes and keep their
        # dtype (a bfloat16 scale would move every dequantized weight). Devices still move.
        scales = self.scales
        self._int4_kernel = None  # rebuilt on the new device at the next forward
        super()._apply(fn, recurse)
        if self.scales.dtype != scales.dtype:
            self.scales = scales.to(self.scales.device)
        return self

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, for code that reads `.weight` (the fused LM-head loss)."""
        return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        if self.use_kernel and x.dtype == torch.float32 and x.device.type == "cpu" and \
                x.numel() <= KERNEL_MAX_ROWS * self.in_features:
            y = self._kernel_matmul(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
            return y + self.bias if self.bias is not None else y
        return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def _kernel_matmul(self, x: torch.Tensor) -> torch.Tensor:  # (M, K) float32 -> (M, N)
        """torch's CPU kernels that read the codes directly, never building the float weight."""
        if self.bits == 8:  # int8 codes times per-row scales
            return torch._weight_int8pack_mm(x, self.qweight, self.scales)
        if self._int4_kernel is None:
            # The int4 kernel wants its own tiled packing and (K/g, N, 2) float (scale, offset)
            # pairs with W = (q - 8) * scale + offset, i.e. offset = (8 - z) * scale. Built once
            # from the saved codes (which stay the format on disk) and kept beside them.
            codes = rtn.unpack_int4(self.qweight).to(torch.int32)
            s, z = self.scales.float(), self.zeros.float()
            self._int4_kernel = (torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1),
                                 torch.stack((s.T, ((8 - z) * s).T), dim=-1).contiguous())
        packed, scales_and_offsets = self._int4_kernel
        return torch._weight_int4pack_mm_for_cpu(x, packed, self.group_size, scales_and_offsets)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}"


def quantizable_linears(model: nn.Module, head: bool = False) -> dict[str, nn.Linear]:
    """{name: Linear} of the layers a quantizer replaces: every block's projections (and the LM
    head when `head`), in the order a forward pass reaches them."""
    found = {name: module for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rpartition(".")[2] in BLOCK_LINEARS}
    if head and isinstance(getattr(model, "lm_head", None), nn.Linear):
        found["lm_head"] = model.lm_head
    return found


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def make_quantized_skeleton(model: nn.Module, quantization: dict) -> None:
    """Replace the Linears a `quantization_config` names (in `model`, built on the meta device) by
    empty `QuantLinear`s of the same shape, so that the directory's tensors load into it strictly."""
    from minillama.errors import CheckpointError

    method = quantization.get("quant_method")
    if method != "minillama" or quantization.get("bits") not in (4, 8):
        raise CheckpointError(f"quantization_config quant_method {method!r} with bits {quantization.get('bits')!r} "
                              "is not supported; minillama loads the directories `minillama quantize` writes")
    for name in quantization["modules"]:
        linear = model.get_submodule(name)
        replace_module(model, name, QuantLinear(linear.in_features, linear.out_features, quantization["bits"],
                                                quantization.get("group_size"), linear.bias is not None,
                                                device="meta"))
