"""Co-training (issue 20): several jobs' adapters trained on one shared frozen base."""

from .optim import member_optimizer
from .routing import add_member, member_loss, member_parameters, member_state, new_pack, routed

__all__ = ["add_member", "member_loss", "member_optimizer", "member_parameters", "member_state", "new_pack", "routed"]
