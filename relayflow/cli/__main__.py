from relayflow.cli import main

main()
