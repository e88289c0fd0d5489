"""How the search reaches a model's loss: ``loss_fn(model, batch)``, where a batch is whatever
the model's loss takes: the original's ``(input, target)``, the recurrent cell's
``(hidden, input, target)``, a dict, any nesting of these."""
import torch


def model_loss(model, batch):
    """The original DARTS models' loss, ``model._loss(*batch)``: the architect's default."""
    return scalar_loss(model._loss(*batch), "Architect: model._loss(*batch)",
                       hint="; for a model whose _loss returns more than the loss (the recurrent "
                            "cell's (loss, hidden)), give Architect a loss_fn(model, batch) that "
                            "returns the loss")


def criterion_loss(criterion):
    """The original loop body's weight loss as a ``loss_fn``: for a batch ``(x, y)``,
    ``logits = model(x)`` and ``(criterion(logits, y), logits)``."""

    def loss_fn(model, batch):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"SearchStep: without loss_fn a batch must be (input, target), got "
                            f"{_kind(batch)}; give SearchStep a loss_fn(model, batch) for "
                            f"other batches")
        x, y = batch
        logits = model(x)
        return scalar_loss(criterion(logits, y), "SearchStep: criterion(logits, target)"), logits

    return loss_fn


def scalar_loss(loss, source, expected="the loss as a 0-dim tensor", hint=""):
    """``loss`` where it is a 0-dim tensor; otherwise an error naming ``source`` (the call that
    gave it), what was ``expected`` and the ``hint``. Reads shapes only: no host
    synchronisation."""
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{source} must return {expected}, got {_kind(loss)}{hint}")
    if loss.dim() != 0:
        raise ValueError(f"{source} must return {expected}, got a tensor of shape "
                         f"{tuple(loss.shape)} (reduce it, e.g. with .mean())")
    return loss


def loss_and_output(value, source):
    """``(loss, output)`` from what a weight step's ``loss_fn`` returned: the loss alone (output
    None) or ``(loss, output)``."""
    expected = "a 0-dim loss tensor or (loss, output)"
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return scalar_loss(value[0], source, expected), value[1]
    return scalar_loss(value, source, expected), None


def _kind(value):
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return "None" if value is None else f"a {type(value).__name__}"
