from moksori.cli.main import main

main()
