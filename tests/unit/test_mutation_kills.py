"""Tests written to kill mutants that survived tools/mutation.sh (see README, Tests): each pins a behaviour
of a core module that no other fast test checked exactly."""

from __future__ import annotations
