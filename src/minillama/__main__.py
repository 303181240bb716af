from minillama.cli import main

raise SystemExit(main())
