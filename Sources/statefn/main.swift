print("statefn")
