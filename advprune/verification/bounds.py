"""Interval bound propagation (IBP, Gowal et al. 2018) and CROWN backward linear bounds (Zhang et al. 2018)
on a traced model (advprune.verification.graph), for an L-inf box of inputs.

- IBP pushes [lower, upper] forward in centre/radius form: an affine map W sends (m, r) to (W m + b, |W| r);
  ReLU and max pooling are monotone. The last affine layer is merged with the specification C first (as in
  CROWN-IBP), so margins come from C W instead of from intervals of the logits.
- CROWN propagates a linear function A x backward from the specification: affine maps are transposed exactly,
  ReLU uses the adaptive relaxation (upper: the chord u(x - l)/(u - l); lower: slope 1 if u > -l else 0),
  residual additions send A to both branches (the backward pass sums what reaches a node from all its users),
  and the result is concretised on the input box. It needs bounds on every ReLU (and max-pool) input:
  `intermediate="ibp"` takes IBP's (CROWN-IBP, Zhang et al. 2020: cheap, one backward pass from the
  specification), `intermediate="crown"` bounds every such node by its own CROWN pass first (full CROWN: much
  tighter on deep networks, but one backward pass per neuron, so only for small networks), intersected
  with IBP's.
- Max pooling (non-overlapping windows) in CROWN: y >= x_i* for i* the window's element with the largest
  lower bound; y <= x_i* when that element dominates (its lower bound >= every other upper bound), else
  y <= max upper bound. Overlapping max pools raise UnsupportedModel for CROWN (IBP still covers them).
- BatchNorm is the affine map of its running statistics in eval mode; in train mode (certified training),
  the statistics of the clean batch, which the bound pass computes alongside (as auto_LiRPA does).

Every bound is sound up to float rounding of the float32 arithmetic (~1e-6 relative).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from advprune.verification.graph import Op, UnsupportedModel, trace


def margin_spec(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """C of shape [B, n_classes - 1, n_classes]: row j is e_y - e_j for every class j != y (CROWN-IBP's
    specification); C f(x) > 0 on the whole ball means the point is certified."""
    eye = torch.eye(n_classes, device=y.device)
    others = torch.arange(n_classes, device=y.device).expand(len(y), -1)
    others = others[others != y[:, None]].view(len(y), n_classes - 1)
    return eye[y][:, None, :] - eye[others]


class BoundedModel:
    """A traced model with IBP and CROWN bounds; reads the module weights at every call."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.ops: list[Op] = trace(model)
        self._pool_matrices: dict[tuple, torch.Tensor] = {}

    # --- forward passes ---------------------------------------------------------------------------------
    def _bn_affine(self, op: Op, value: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        bn = op.module
        if bn.training or not bn.track_running_stats:
            if value is None:
                raise ValueError(f"{op.name}: BatchNorm in train mode needs the clean input (pass x)")
            dims = [0] + list(range(2, value.dim()))
            mean, var = value.mean(dims), value.var(dims, unbiased=False)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale + (bn.bias if bn.bias is not None else 0.0)
        return scale, shift

    @staticmethod
    def _channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.view(-1, *([1] * (ndim - 2)))

    def _affine(self, op: Op, x: torch.Tensor, bias: bool = True, absolute: bool = False, bn: tuple | None = None) -> torch.Tensor:
        m = op.module
        if op.kind == "linear":
            w = m.weight.abs() if absolute else m.weight
            return F.linear(x, w, m.bias if bias else None)
        if op.kind == "conv":
            w = m.weight.abs() if absolute else m.weight
            return F.conv2d(x, w, m.bias if bias else None, m.stride, m.padding, m.dilation, m.groups)
        scale, shift = bn
        scale = scale.abs() if absolute else scale
        out = x * self._channel(scale, x.dim())
        return out + self._channel(shift, x.dim()) if bias else out

    def ibp(self, lower: torch.Tensor, upper: torch.Tensor, x: torch.Tensor | None = None, spec: torch.Tensor | None = None):
        """Interval bounds of every operation: (bounds, out_lower, out_upper, shapes, bn) where bounds[i] is
        (l, u) of op i's output, `out_*` are bounds of spec @ output (or of the output without spec), shapes
        the per-sample output shapes, bn the BatchNorm affine maps used. `x`: the clean input, needed when a
        BatchNorm is in train mode."""
        need_value = x is not None
        bounds, shapes, bn = [], [], {}
        values: list[torch.Tensor | None] = []
        last = len(self.ops) - 1
        for i, op in enumerate(self.ops):
            if op.kind == "input":
                bounds.append((lower, upper))
                values.append(x if need_value else None)
                shapes.append(tuple(lower.shape[1:]))
                continue
            (l, u) = bounds[op.inputs[0]]
            v = values[op.inputs[0]]
            if op.kind in ("linear", "conv", "bn"):
                if op.kind == "bn":
                    bn[i] = self._bn_affine(op, v)
                if i == last and spec is not None and op.kind == "linear":
                    # merge the specification into the last layer: bounds of C W x + C b directly
                    w = spec @ op.module.weight
                    b = spec @ op.module.bias if op.module.bias is not None else 0.0
                    mid, rad = ((u + l) / 2)[:, None, :], ((u - l) / 2)[:, None, :]
                    centre = (w * mid).sum(-1) + b
                    radius = (w.abs() * rad).sum(-1)
                    out = (centre - radius, centre + radius)
                    bounds.append(out)
                    shapes.append(tuple(out[0].shape[1:]))
                    values.append(None)
                    return bounds, out[0], out[1], shapes, bn
                mid, rad = (u + l) / 2, (u - l) / 2
                mid = self._affine(op, mid, bn=bn.get(i))
                rad = self._affine(op, rad, bias=False, absolute=True, bn=bn.get(i))
                out = (mid - rad, mid + rad)
                values.append(self._affine(op, v, bn=bn.get(i)) if v is not None else None)
            elif op.kind == "relu":
                out = (l.clamp(min=0), u.clamp(min=0))
                values.append(v.clamp(min=0) if v is not None else None)
            elif op.kind == "maxpool":
                pool = lambda t: F.max_pool2d(t, **op.options)  # noqa: E731
                out = (pool(l), pool(u))
                values.append(pool(v) if v is not None else None)
            elif op.kind == "pool":
                out = (op.options["fn"](l), op.options["fn"](u))  # averages: nonnegative weights
                values.append(op.options["fn"](v) if v is not None else None)
            elif op.kind == "flatten":
                out = (l.flatten(1), u.flatten(1))
                values.append(v.flatten(1) if v is not None else None)
            elif op.kind == "add":
                (l2, u2), v2 = bounds[op.inputs[1]], values[op.inputs[1]]
                out = (l + l2, u + u2)
                values.append(v + v2 if v is not None else None)
            else:  # pragma: no cover - trace() only emits the kinds above
                raise UnsupportedModel(op.kind)
            bounds.append(out)
            shapes.append(tuple(out[0].shape[1:]))
        out_l, out_u = bounds[-1]
        if spec is not None:
            pos, neg = spec.clamp(min=0), spec.clamp(max=0)
            low, up = out_l[:, :, None], out_u[:, :, None]
            out_l, out_u = (pos @ low + neg @ up).squeeze(-1), (pos @ up + neg @ low).squeeze(-1)
        return bounds, out_l, out_u, shapes, bn

    # --- CROWN ------------------------------------------------------------------------------------------
    def _pool_matrix(self, op: Op, shape: tuple, device, dtype) -> torch.Tensor:
        """P with pool(x)[c] = P @ x[c] over flattened spatial positions (average pools act per channel)."""
        key = (id(op), shape, device, dtype)
        if key not in self._pool_matrices:
            h, w = shape[-2:]
            basis = torch.eye(h * w, device=device, dtype=dtype).view(h * w, 1, h, w)
            with torch.no_grad():
                self._pool_matrices[key] = op.options["fn"](basis).flatten(1).T.contiguous()
        return self._pool_matrices[key]

    def _transpose(self, op: Op, a: torch.Tensor, in_shape: tuple, bn) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(A L, A b) for the affine op L x + b, A of shape [B, S, *out_shape]."""
        batch, specs = a.shape[:2]
        m = op.module
        if op.kind == "linear":
            bias = a @ m.bias if m.bias is not None else 0.0
            return a @ m.weight, bias
        if op.kind == "conv":
            out_shape = a.shape[2:]
            flat = a.reshape(batch * specs, *out_shape)
            extra = []
            for d in range(2):
                k = m.dilation[d] * (m.kernel_size[d] - 1) + 1
                extra.append(in_shape[d + 1] - ((out_shape[d + 1] - 1) * m.stride[d] - 2 * m.padding[d] + k))
            back = F.conv_transpose2d(flat, m.weight, None, m.stride, m.padding, tuple(extra), m.groups, m.dilation)
            bias = torch.einsum("bschw,c->bs", a, m.bias) if m.bias is not None else 0.0
            return back.view(batch, specs, *in_shape), bias
        if op.kind == "bn":
            scale, shift = bn
            shape = (1, 1, -1) + (1,) * (a.dim() - 3)
            return a * scale.view(shape), (a * shift.view(shape)).flatten(2).sum(-1)
        if op.kind == "pool":
            p = self._pool_matrix(op, in_shape, a.device, a.dtype)
            return (a.flatten(3) @ p).view(batch, specs, *in_shape), 0.0
        if op.kind == "flatten":
            return a.view(batch, specs, *in_shape), 0.0
        raise UnsupportedModel(f"{op.name}: {op.kind} is not affine")  # pragma: no cover

    @staticmethod
    def _relu_relaxation(l: torch.Tensor, u: torch.Tensor):
        """(lower slope, upper slope, upper intercept) of the adaptive CROWN relaxation: with l^- = min(l, 0)
        and u^+ = max(u, 0), the upper line u^+ (x - l^-) / (u^+ - l^-) is the chord when l < 0 < u, x when
        active, 0 when dead; the lower slope is 1 when u > -l (active included), else 0."""
        lo, hi = l.clamp(max=0), u.clamp(min=0)
        up_slope = hi / (hi - lo).clamp(min=1e-12)
        return (u > -l).to(u.dtype), up_slope, -up_slope * lo

    def _maxpool_relaxation(self, op: Op, l: torch.Tensor, u: torch.Tensor):
        o = op.options
        k = o["kernel_size"] if isinstance(o["kernel_size"], tuple) else (o["kernel_size"],) * 2
        s = o["stride"] if isinstance(o["stride"], tuple) else (o["stride"],) * 2
        p = o["padding"] if isinstance(o["padding"], tuple) else (o["padding"],) * 2
        d = o["dilation"] if isinstance(o["dilation"], tuple) else (o["dilation"],) * 2
        if k != s or p != (0, 0) or d != (1, 1) or o["ceil_mode"]:
            raise UnsupportedModel(f"{op.name}: CROWN covers max pooling with non-overlapping, unpadded windows only")
        best_lower, index = F.max_pool2d(l, k, s, return_indices=True)
        upper_max = F.max_pool2d(u, k, s)
        others = u.flatten(2).scatter(2, index.flatten(2), float("-inf")).view_as(u)
        dominant = (best_lower >= F.max_pool2d(others, k, s)).to(l.dtype)
        # one-hot of each window's chosen element on the input grid (rows/columns left over by the pool: none)
        height, width = l.shape[-2:]
        spread = index.repeat_interleave(k[0], -2).repeat_interleave(k[1], -1)
        spread = F.pad(spread, (0, width - spread.shape[-1], 0, height - spread.shape[-2]), value=-1)
        chosen = (spread == torch.arange(height * width, device=l.device).view(height, width)).to(l.dtype)
        return chosen, dominant, upper_max, k

    def backward(self, target: int, spec: torch.Tensor, bounds, shapes, bn, need_upper: bool = True):
        """Lower (and upper) bounds of spec @ output(target) over the input box, by CROWN.
        spec: [B, S, *shapes[target]]; `bounds` supply the ReLU/max-pool input bounds. Returns ([B, S], [B, S] | None)."""
        a_low: dict[int, torch.Tensor] = {target: spec}
        a_up: dict[int, torch.Tensor] = {target: spec} if need_upper else {}
        bias_low = bias_up = 0.0

        def push(store, i, a):
            store[i] = store[i] + a if i in store else a

        for i in range(target, 0, -1):
            if i not in a_low:
                continue
            op = self.ops[i]
            al, au = a_low.pop(i), a_up.pop(i, None)
            src = op.inputs[0]
            if op.kind in ("linear", "conv", "bn", "pool", "flatten"):
                back, b = self._transpose(op, al, shapes[src], bn.get(i))
                push(a_low, src, back)
                bias_low = bias_low + b
                if au is not None:
                    back, b = self._transpose(op, au, shapes[src], bn.get(i))
                    push(a_up, src, back)
                    bias_up = bias_up + b
            elif op.kind == "add":
                for j in op.inputs:
                    push(a_low, j, al)
                    if au is not None:
                        push(a_up, j, au)
            elif op.kind == "relu":
                # A >= 0 takes the lower relaxation, A < 0 the upper one (swapped for the upper bound); the
                # intercept's contribution is a batched dot product, without another A-sized temporary
                low_slope, up_slope, up_bias = self._relu_relaxation(*bounds[src])
                low_slope, up_slope, intercept = low_slope[:, None], up_slope[:, None], up_bias.flatten(1)[:, :, None]
                push(a_low, src, al * torch.where(al >= 0, low_slope, up_slope))
                bias_low = bias_low + (al.clamp(max=0).flatten(2) @ intercept).squeeze(-1)
                if au is not None:
                    push(a_up, src, au * torch.where(au >= 0, up_slope, low_slope))
                    bias_up = bias_up + (au.clamp(min=0).flatten(2) @ intercept).squeeze(-1)
            elif op.kind == "maxpool":
                chosen, dominant, upper_max, k = self._maxpool_relaxation(op, *bounds[src])
                height, width = shapes[src][-2:]

                def unpool(a):  # each window's coefficient onto its chosen element (deterministic, unlike max_unpool2d)
                    spread = a.repeat_interleave(k[0], -2).repeat_interleave(k[1], -1)
                    return F.pad(spread, (0, width - spread.shape[-1], 0, height - spread.shape[-2])) * chosen[:, None]

                dom, loose = dominant[:, None], (1 - dominant)[:, None] * upper_max[:, None]
                pos, neg = al.clamp(min=0), al.clamp(max=0)
                push(a_low, src, unpool(pos + neg * dom))
                bias_low = bias_low + (neg * loose).flatten(2).sum(-1)
                if au is not None:
                    pos, neg = au.clamp(min=0), au.clamp(max=0)
                    push(a_up, src, unpool(neg + pos * dom))
                    bias_up = bias_up + (pos * loose).flatten(2).sum(-1)
            else:  # pragma: no cover
                raise UnsupportedModel(f"{op.name}: {op.kind}")
        x_low, x_up = bounds[0]
        mid, rad = ((x_up + x_low) / 2)[:, None].flatten(2), ((x_up - x_low) / 2)[:, None].flatten(2)

        def concretise(a, sign):
            a = a.flatten(2)
            return (a * mid).sum(-1) + sign * (a.abs() * rad).sum(-1)

        lower = concretise(a_low[0], -1) + bias_low
        upper = concretise(a_up[0], 1) + bias_up if need_upper else None
        return lower, upper

    def _relaxed_inputs(self) -> list[int]:
        """Ops whose bounds a relaxation reads: the inputs of ReLUs and max pools, in topological order."""
        return sorted({op.inputs[0] for op in self.ops if op.kind in ("relu", "maxpool")})

    def crown(self, lower: torch.Tensor, upper: torch.Tensor, spec: torch.Tensor | None = None, x: torch.Tensor | None = None,
              intermediate: str = "ibp", need_upper: bool = True, chunk: int = 1024, ibp_result=None):
        """(lower, upper) of spec @ output over the box (spec None: the output itself). `intermediate`:
        ibp (CROWN-IBP) or crown (full CROWN, each relaxed node bounded by CROWN within IBP's bounds).
        `ibp_result`: what `ibp()` returned for the same box, if already computed."""
        if intermediate not in ("ibp", "crown"):
            raise ValueError(f"intermediate must be 'ibp' or 'crown', not {intermediate!r}")
        bounds, _, _, shapes, bn = ibp_result if ibp_result is not None else self.ibp(lower, upper, x)
        bounds = list(bounds)
        if intermediate == "crown":
            for node in self._relaxed_inputs():
                l_ibp, u_ibp = bounds[node]
                n = l_ibp[0].numel()
                lows, ups = [], []
                for start in range(0, n, chunk):
                    rows = torch.eye(n, device=lower.device, dtype=lower.dtype)[start:start + chunk]
                    rows = rows.view(-1, *shapes[node]).expand(len(lower), -1, *shapes[node])
                    lo, up = self.backward(node, rows, bounds, shapes, bn)
                    lows.append(lo)
                    ups.append(up)
                bounds[node] = (torch.max(torch.cat(lows, 1).view_as(l_ibp), l_ibp), torch.min(torch.cat(ups, 1).view_as(u_ibp), u_ibp))
        last = len(self.ops) - 1
        if spec is None:
            n = bounds[last][0][0].numel()
            spec = torch.eye(n, device=lower.device, dtype=lower.dtype).view(n, *shapes[last]).expand(len(lower), -1, *shapes[last])
        return self.backward(last, spec, bounds, shapes, bn, need_upper)


def input_box(x: torch.Tensor, eps: float, low: float = 0.0, high: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf ball of radius eps around x, clipped to the input domain [low, high]."""
    return (x - eps).clamp(min=low), (x + eps).clamp(max=high)
