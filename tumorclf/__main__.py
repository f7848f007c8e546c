"""`python -m tumorclf COMMAND ...`: the same as the `tumorclf` console command."""

from tumorclf.cli.main import main

raise SystemExit(main())
