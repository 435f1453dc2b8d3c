"""Horovod's DistributedOptimizer on ringtrain's GradientReducer: averaging overlaps backward, bucket by bucket.

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * hvd.size())
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    loss.backward()          # buckets are averaged while backward goes on
    optimizer.step()         # waits for the last bucket, then the user's optimizer steps

The gradients go through one GradientReducer (ringtrain/reducer/) given the
optimizer's parameters, on a duplicate of the job's communicator made for
this optimizer (a second DistributedOptimizer, a GAN's, never meets this
one's messages). A hook on each parameter makes its ``grad`` the parameter's
slice of its bucket just before backward accumulates into it, so autograd
writes straight into the buckets and nothing is copied, whatever
``zero_grad(set_to_none=...)`` did; it also counts backward passes for
``backward_passes_per_step`` and refuses one too many, before it is summed in.

The returned object is an instance of a subclass of the optimizer's own class
(as Horovod's is), so ``isinstance(opt, type(original))``, LR schedulers,
``state_dict`` and ``param_groups`` behave as for the original. The subclass
is the class statement in ``_distributed_class``: ``HorovodOptimizer``, written
once, in front of the user's class, made once per optimizer class (cached),
not built from a dict of methods by ``type(...)``. As in Horovod, it shares
the original's ``param_groups`` (their hyperparameters) and starts with empty
state.

Differences from Horovod 0.28.1, each for a reason:
- ``gradient_predivide_factor`` (Average only, as Horovod checks) changes no
  value here: the reducer's mean is ringtrain's (summed in the gradients'
  dtype, then divided), which is Horovod's result up to rounding.
- ``groups``/``num_groups`` are checked as Horovod checks them. An integer k
  caps the reducer's buckets at 1/k of the gradients' bytes, so about k
  buckets are averaged, Horovod's k fused groups; a list of lists changes no
  layout (ringtrain's buckets follow the parameters' order backwards, by size).
- Sparse gradients (``nn.Embedding(sparse=True)``) are summed into the dense
  bucket and averaged dense whatever ``sparse_as_dense`` says (Horovod
  allgathers them unless it is True); the optimizer gets them back sparse,
  as with Horovod.
- ``op``: Average or Sum; Adasum (and Min, Max, Product) raise ValueError.
- ``process_set``: only the whole job (None or a process set of every rank).
- Construction is collective (the reducer agrees on the layout), as torch DDP's is.
"""
import functools
import warnings
import weakref

import torch

from ..reducer import GradientReducer
from .basics import Adasum, Average, Sum, job, size
from .compression import Compression, reducer_compression
from .named_parameters import check_groups, named_parameters_of, whole_job

TOO_MANY_PASSES = ("a parameter got its gradient more often than backward_passes_per_step={} allows before "
                   "step() or synchronize(); raise backward_passes_per_step to accumulate that many passes "
                   "locally")
ZERO_GRAD_TOO_EARLY = ("optimizer.zero_grad() between loss.backward() and optimizer.step() or "
                       "optimizer.synchronize() is refused: the gradients are being averaged in place")
# Horovod's tests look for this phrase in the warning's text.
STEP_AFTER_SYNCHRONIZE = ("optimizer.step() called without optimizer.skip_synchronize() after "
                          "optimizer.synchronize(): the gradients are averaged again (wasted time, and with op=Sum "
                          "multiplied by size() again); wrap the step in `with optimizer.skip_synchronize():`")


class HorovodOptimizer(torch.optim.Optimizer):
    """What DistributedOptimizer adds to the user's optimizer class; it stands first in the subclass's MRO."""

    def __init__(self, optimizer: torch.optim.Optimizer, named_parameters, compression, backward_passes_per_step: int,
                 op: int, gradient_predivide_factor: float, groups, sparse_as_dense: bool, process_set):
        self._init_as(optimizer)
        self._compression, self.op = compression, op
        self.gradient_predivide_factor, self.sparse_as_dense = gradient_predivide_factor, sparse_as_dense
        self.process_set = process_set
        self._parameter_names = named_parameters_of(self.param_groups, named_parameters)
        self._groups = groups
        self._synchronized = False  # synchronize() ran since the last step()
        self._should_synchronize = True  # False inside skip_synchronize()
        self._sparse = {}  # id(p) -> sparse_dim of the sparse gradients p gets (nn.Embedding(sparse=True))
        self._reducer, self._hooks = None, []
        # As Horovod: on one process there is nothing to average, and nothing is hooked.
        if size() > 1:
            self._start(compression, groups)
        self.backward_passes_per_step = 1
        self.set_backward_passes_per_step(backward_passes_per_step)

    def _init_as(self, optimizer: torch.optim.Optimizer) -> None:
        """The user's class's own initialisation, on the original's param_groups (shared), with fresh state."""
        try:
            # As Horovod does: the class's __init__ sets what its step needs; each group keeps its own
            # hyperparameters, since only missing keys take the class's defaults.
            super().__init__(optimizer.param_groups)
        except TypeError:  # an __init__ with required hyperparameters: the original's attributes, fresh state
            torch.optim.Optimizer.__init__(self, optimizer.param_groups, dict(optimizer.defaults))
            for key, value in vars(optimizer).items():
                self.__dict__.setdefault(key, value)
        self.defaults = dict(optimizer.defaults)  # add_param_group takes the user's defaults, not the class's

    def _start(self, compression, groups) -> None:
        """The reducer over the parameters that need gradients, and a hook on each. Collective."""
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        cap = None
        if isinstance(groups, int):  # about `groups` buckets, as Horovod fuses that many groups
            cap = max(sum(p.numel() * p.element_size() for p in params) / groups, 1) / 1e6
        options = {} if cap is None else {"bucket_cap_mb": cap}
        # A communicator of its own (collective): two optimizers' communication threads never share one.
        self._reducer = GradientReducer(params, comm=job().comm.Dup(), broadcast_from=None,
                                        compression=reducer_compression(compression), **options)
        # The hooks hold the optimizer weakly: once the user drops it, it goes, and its hooks and thread with it
        # (as Horovod's, whose hooks hang on autograd nodes the parameters hold weakly), so the same model can be
        # given a new DistributedOptimizer.
        me = weakref.ref(self)
        self._hooks = [p.register_hook(functools.partial(_before_accumulate, me, p)) for p in params]
        weakref.finalize(self, _release, self._reducer, self._hooks)

    def _before_accumulate(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        """Before backward sums ``grad`` into ``p.grad``: count the pass, and make ``p.grad`` its bucket slice."""
        if self._reducer.passes(p) >= self.backward_passes_per_step:
            raise AssertionError(TOO_MANY_PASSES.format(self.backward_passes_per_step))
        if grad.is_sparse:
            self._sparse[id(p)] = grad.sparse_dim()
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()  # the reducer copies it into the bucket, where the rest is summed in place
        self._reducer.attach_gradient(p)

    def set_backward_passes_per_step(self, passes: int) -> None:
        """Average each gradient at its ``passes``-th backward since the last step; the earlier ones are summed
        locally (not divided: scale the loss by 1/passes for the mean over passes, as with Horovod)."""
        _check_passes(passes)
        self.backward_passes_per_step = passes
        if self._reducer is not None:
            self._reducer.backward_passes = passes

    def synchronize(self) -> None:
        """Wait until every gradient is averaged over the job, leaving the results in ``p.grad``.

        Gradients not yet sent (fewer backward passes than
        backward_passes_per_step) are averaged now. As in Horovod, a parameter
        that no rank gave a gradient gets zeros. Collective.
        """
        if self._reducer is not None:
            self._reducer.synchronize()
            self._finish_gradients()
        self._synchronized = True

    def _finish_gradients(self) -> None:
        grads = []
        for p in self._reducer.params:
            if p.grad is None:
                self._reducer.attach_gradient(p)  # zeros, as Horovod allreduces zeros for a missing gradient
            else:
                grads.append(p.grad)
        if self.op == Sum and grads:
            torch._foreach_mul_(grads, float(size()))  # the reducer averages; Sum is size() times the mean
        for p in self._reducer.params:
            if id(p) in self._sparse:  # handed back sparse, as the optimizer (SparseAdam) got it
                p.grad = p.grad.to_sparse(self._sparse[id(p)])

    def skip_synchronize(self):
        """A context in which ``step()`` does not synchronize: after an explicit ``synchronize()`` (to clip).

        >>> optimizer.synchronize()                                     # doctest: +SKIP
        >>> torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)    # doctest: +SKIP
        >>> with optimizer.skip_synchronize():                          # doctest: +SKIP
        ...     optimizer.step()
        """
        return _SkipSynchronize(self)

    def step(self, closure=None):
        """Synchronize (unless inside ``skip_synchronize``), then the user's optimizer's step."""
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn(STEP_AFTER_SYNCHRONIZE, stacklevel=2)
            self.synchronize()
        self._synchronized = False
        return super().step(closure)

    # torch wraps a class's step once (profiler span, step hooks); the user's class's step, called above, is
    # wrapped already, so this one is marked as wrapped and the hooks run once per step, not twice.
    step.hooked = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's, but refused (AssertionError, as Horovod) while gradients are being averaged."""
        if self._reducer is not None and self._reducer.pending:
            raise AssertionError(ZERO_GRAD_TOO_EARLY)
        return super().zero_grad(set_to_none)

    def load_state_dict(self, state_dict) -> None:
        """As torch's; a synchronize() before it no longer counts for the next step (as Horovod)."""
        self._synchronized, self._should_synchronize = False, True
        return super().load_state_dict(state_dict)


def _before_accumulate(optimizer: "weakref.ref[HorovodOptimizer]", p: torch.Tensor, grad: torch.Tensor) -> None:
    live = optimizer()
    if live is not None:
        live._before_accumulate(p, grad)


def _release(reducer: GradientReducer, hooks: list) -> None:
    """What a DistributedOptimizer leaves behind when it goes: its hooks on the parameters, its reducer's thread."""
    for hook in hooks:
        hook.remove()
    reducer.close()


def _check_passes(passes) -> None:
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"backward_passes_per_step={passes!r} is not allowed — a whole number >= 1")


class _SkipSynchronize:
    """``with optimizer.skip_synchronize():`` — step() inside does not synchronize."""

    def __init__(self, optimizer: HorovodOptimizer):
        self.optimizer = optimizer

    def __enter__(self):
        self.optimizer._should_synchronize = False

    def __exit__(self, *exc):
        self.optimizer._should_synchronize = True
        return False


@functools.cache
def _distributed_class(base: type) -> type:
    """The subclass of ``base`` (the user's optimizer class) that DistributedOptimizer returns; one per class."""

    class Distributed(HorovodOptimizer, base):
        __doc__ = f"{base.__name__} whose gradients are averaged over the job (ringtrain.horovod.DistributedOptimizer)."

    # Named as the user's class, as Horovod's is, for code and logs that print type(optimizer).__name__.
    Distributed.__name__ = Distributed.__qualname__ = base.__name__
    return Distributed


def DistributedOptimizer(optimizer: torch.optim.Optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step: int = 1, op: int = Average,
                         gradient_predivide_factor: float = 1.0, num_groups: int = 0, groups=None,
                         sparse_as_dense: bool = False, process_set=None) -> torch.optim.Optimizer:
    """``optimizer``, with its gradients averaged over the job while backward runs (Horovod's semantics).

    ``named_parameters`` (usually ``model.named_parameters()``) must name every
    parameter of the optimizer, each name once (ValueError otherwise).
    ``compression``: ``Compression.none``, ``Compression.fp16`` or
    ``Compression.from_spec("ef+int8")`` (any ringtrain spec; its state is kept
    per bucket). ``backward_passes_per_step``: backward passes summed locally
    before averaging. ``op``: Average or Sum. The module docstring lists what
    differs from Horovod. Collective: every rank wraps its optimizer alike.

    >>> opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),   # doctest: +SKIP
    ...                            named_parameters=model.named_parameters())
    >>> isinstance(opt, torch.optim.SGD)                                           # doctest: +SKIP
    True
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer={optimizer!r} is not allowed — a torch.optim.Optimizer")
    if isinstance(optimizer, HorovodOptimizer):
        raise ValueError("optimizer is a DistributedOptimizer already; wrap the plain optimizer once")
    if gradient_predivide_factor != 1.0 and op != Average:
        raise ValueError(f"gradient_predivide_factor={gradient_predivide_factor!r} is allowed only with op=Average "
                         f"(got op={op!r})")
    if op == Adasum and size() > 1:
        raise ValueError("op=Adasum is not built in ringtrain.horovod; use op=hvd.Average or op=hvd.Sum")
    if op not in (Average, Sum, Adasum):
        raise ValueError(f"op={op!r} is not allowed — hvd.Average ({Average}) or hvd.Sum ({Sum})")
    if not whole_job(process_set):
        raise ValueError(f"process_set={process_set!r} is not allowed — DistributedOptimizer averages over the "
                         "whole job only (process_set=None or hvd.global_process_set)")
    if num_groups != 0:
        warnings.warn("num_groups is deprecated: use groups", DeprecationWarning, stacklevel=2)
        if groups is None:
            groups = num_groups
    check_groups(groups)
    _check_passes(backward_passes_per_step)
    reducer_compression(compression)  # a bad compression raises before anything collective
    return _distributed_class(type(optimizer))(optimizer, named_parameters, compression, backward_passes_per_step,
                                               op, gradient_predivide_factor, groups, sparse_as_dense, process_set)
