from qaflow_mail.cli import main

raise SystemExit(main())
