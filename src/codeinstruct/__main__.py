# `python -m codeinstruct ...` (what torchrun launches) runs the same CLI as the console script.
from codeinstruct.cli import main

main()
