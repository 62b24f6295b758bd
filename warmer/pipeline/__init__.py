"""The warm pipeline: plans -> targets -> replay in a fresh process -> verify -> publish; and each target's status."""
