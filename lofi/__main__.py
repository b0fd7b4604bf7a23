"""`python -m lofi ...` runs the same CLI as the `lofi` console script."""

from lofi.cli import main

if __name__ == "__main__":
    main(prog_name="lofi")
