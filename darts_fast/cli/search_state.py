"""What a search's checkpoint holds beyond the weights, in either space: the alphas (leaf tensors,
absent from the model's state_dict) and their optimizer's state (None for a method without an
architecture step)."""
import torch


def save(model, architect):
    return {"alphas": [a.detach().cpu() for a in model.arch_parameters()],
            "architect_optimizer": None if architect is None else
            architect.optimizer.state_dict()}


def restore(model, architect, state):
    """Loads ``save``'s dict into the model's alphas, in place, and into the architect's
    optimizer; refuses alphas of other shapes."""
    alphas = model.arch_parameters()
    if [tuple(a.shape) for a in state["alphas"]] != [tuple(a.shape) for a in alphas]:
        raise ValueError("the saved alphas have other shapes than the model's")
    with torch.no_grad():
        for alpha, saved in zip(alphas, state["alphas"]):
            alpha.copy_(saved)
    if architect is not None:
        architect.optimizer.load_state_dict(state["architect_optimizer"])
