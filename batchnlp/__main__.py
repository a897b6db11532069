from batchnlp.cli import main

main()
