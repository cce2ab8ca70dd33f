from scratchllm.cli import main

raise SystemExit(main())
