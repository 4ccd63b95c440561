from safehold.cli.main import leave, main

leave(main())
