"""Routing: exact weighted splitting of message blocks among analyzers (pure code, no I/O)."""

from logdist.routing.slowstart import SlowStart
from logdist.routing.splitter import ExactSplitter
from logdist.routing.table import Router, RouteTable
from logdist.routing.tree import WeightNode, flatten

__all__ = ["ExactSplitter", "RouteTable", "Router", "SlowStart", "WeightNode", "flatten"]
