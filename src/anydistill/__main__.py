from anydistill.cli import main

main()
