from lattice_flows.cli import main

raise SystemExit(main())
