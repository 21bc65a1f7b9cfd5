from push.app import main

main()
