"""`python -m steerheal ...` is the `steerheal` command; launchers start it this way:
`torchrun --nproc_per_node N -m steerheal run ...` or `accelerate launch --multi_gpu --num_processes N -m steerheal
run ...` (docs/scale.md)."""

from steerheal.cli import main

if __name__ == "__main__":
    main()
