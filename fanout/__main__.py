from fanout.app import main

main()
