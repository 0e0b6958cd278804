"""Optimization layers: ``nn.Module`` s whose forward pass is a solve (OptNet QP)."""

from .qp import QPLayer

__all__ = ["QPLayer"]
