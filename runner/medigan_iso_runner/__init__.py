"""medigan_iso_runner: the program that runs inside a model's env (contract in ``__main__``'s docstring).

Standalone: stdlib, msgpack and numpy only, Python >= 3.7, and it never imports medigan_iso.
"""
