"""Benchmarks (`make bench`): each compares our code with a peer measured in the same run and prints ratios.

Loops are bounded in count; all traffic stays on loopback. Figures are medians; a ratio < 1 means ours is faster.
"""
